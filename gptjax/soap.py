"""SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"): Adam run in the eigenbasis
of Shampoo's preconditioner, as an optax transformation (optax has none).

For a matrix parameter W (m × n) with gradient G the method keeps Shampoo's two statistics, L ← β·L +
(1 − β)·G Gᵀ and R ← β·R + (1 − β)·GᵀG, and their eigenvector bases Q_L, Q_R. Each update rotates the
gradient and the momentum into that basis, G' = Q_Lᵀ G Q_R and M' = Q_Lᵀ M Q_R, keeps Adam's second moment
V of G' there, takes the Adam step N' = M' / (√V + ε) and rotates it back, N = Q_L N' Q_Rᵀ. The bases are
computed by `eigh` from the first gradient and then refreshed every `precondition_frequency` updates by one
step of power iteration and a QR decomposition, Q ← qr(P·Q) for P = L, R; before that, the columns of Q are
ordered by the estimated eigenvalues diag(QᵀPQ), largest first, and V's rows or columns follow them so
that each coordinate keeps its own second moment. Where the paper leaves details open this follows the
authors' released code (github.com/nikhilvyas/SOAP): the first call only gathers L, R and the bases and
moves nothing; bias correction is lr·√(1 − β2^t)/(1 − β1^t) with t counted from the second call and ε
added to √V; a side longer than `max_precond_dim` is not rotated (identity); vectors get plain Adam.
The momentum M is kept in the parameter's own basis and rotated at every update, which equals the
released code's re-projection of its rotated momentum whenever the basis changes. Scanned layer stacks
(a leading layer axis under `layers`) are preconditioned layer by layer. Weight decay and the learning
rate are chained after this transformation by the rule (`gptjax/optimizers_modern.py`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# Parameters stacked by `model.scan_layers` live under this key, with a leading layer axis that is not
# one of the matrix's dimensions (as in gptjax/optimizers.py).
STACKED_KEY = "layers"


class ScaleBySoapState(NamedTuple):
    count: jax.Array  # calls so far; the first one only initialises the preconditioner
    mu: Any  # momentum of the gradient, in the parameter's own basis
    nu: Any  # Adam's second moment of the rotated gradient
    left: Any  # L (m × m) per matrix leaf; optax.MaskedNode() (no array) where that side is not rotated
    right: Any  # R (n × n)
    q_left: Any  # eigenbasis of L
    q_right: Any  # eigenbasis of R


def key_name(key: Any) -> str:
    """A pytree path entry (dict key, attribute or index) as the string a parameter tree names it by."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


# Fused projections (gptjax.layers.FusedDense) keep their parts on an axis of their own: kernel [D, n, F],
# bias [n, F]. Every shape-dependent choice of an update rule (the ndim >= 2 decay rule, Adafactor's
# factoring, Muon's hidden matrices and orthogonalisation, SOAP's preconditioned sides) sees them as the
# one Linear they stand for, [D, n·F] and [n·F], so the numbers do not depend on how the parameters are
# laid out for sharding.
FUSED_MODULES = ("c_attn", "c_kv", "c_fc")


def linear_shape(path: tuple, shape: tuple) -> tuple:
    """The shape of the parameter at `path` as the Linear layer it stands for: a fused kernel's or bias's
    parts axis merged with the one after it; every other shape unchanged."""
    names = [key_name(key) for key in path]
    base = 1 if names and names[0] == STACKED_KEY else 0
    linear_ndim = {"kernel": 2, "bias": 1}.get(names[-1] if names else "", -1)
    fused = len(names) >= 2 and names[-2] in FUSED_MODULES and len(shape) == base + linear_ndim + 1
    return (*shape[:-2], shape[-2] * shape[-1]) if fused else tuple(shape)


def as_linear(tree: Any) -> Any:
    """`tree` (arrays or shapes) with every fused leaf reshaped to its Linear shape."""
    def view(path, x):
        shape = linear_shape(path, x.shape)
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(shape, x.dtype)
        return x.reshape(shape)
    return jax.tree_util.tree_map_with_path(view, tree)


def linear_view(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` applied to the Linear shapes of fused parameters (state in those shapes), updates given back
    in the parameters' own shapes."""
    def init(params):
        return tx.init(as_linear(params))

    def update(updates, state, params=None):
        new, state = tx.update(as_linear(updates), state, None if params is None else as_linear(params))
        return jax.tree.map(lambda u, like: u.reshape(like.shape), new, updates), state

    return optax.GradientTransformation(init, update)


def _stacked(path: tuple) -> bool:
    return bool(path) and key_name(path[0]) == STACKED_KEY


def _sides(path: tuple, x, max_dim: int) -> tuple[int, int]:
    """(m, n) of a matrix leaf, each 0 where that side is not rotated (vectors, tensors of other ranks,
    sides longer than max_dim)."""
    shape = x.shape[1:] if _stacked(path) else x.shape
    if len(shape) != 2:
        return 0, 0
    m, n = shape
    return (m if m <= max_dim else 0), (n if n <= max_dim else 0)


def _per_layer(path: tuple, fn):
    # A stacked leaf applies `fn` to each layer's matrix.
    return jax.vmap(fn) if _stacked(path) else fn


def _rotate(x, ql, qr, left: bool, right: bool):
    if left:
        x = ql.T @ x
    if right:
        x = x @ qr
    return x


def _rotate_back(x, ql, qr, left: bool, right: bool):
    if left:
        x = ql @ x
    if right:
        x = x @ qr.T
    return x


def _eigenbasis(p):
    # Eigenvectors of a symmetric PSD matrix, largest eigenvalue first.
    _, q = jnp.linalg.eigh(p)
    return q[:, ::-1]


def _refresh(p, q, nu, axis: int):
    """One power-iteration step with QR; columns first ordered by the estimated eigenvalues diag(QᵀPQ),
    largest first, and `nu` permuted along `axis` the same way."""
    estimate = jnp.einsum("ij,ik,kj->j", q, p, q)
    order = jnp.argsort(-estimate)
    q = q[:, order]
    nu = jnp.take(nu, order, axis=axis)
    q, _ = jnp.linalg.qr(p @ q)
    return q, nu


def scale_by_soap(b1: float = 0.95, b2: float = 0.95, eps: float = 1e-8, shampoo_b2: float | None = None,
                  precondition_frequency: int = 10, max_precond_dim: int = 10_000
                  ) -> optax.GradientTransformation:
    """SOAP's direction (module docstring): Adam in Shampoo's eigenbasis, bias-corrected, without learning
    rate or weight decay. `shampoo_b2` is the decay of L and R (None: b2, the released code's default)."""
    beta_p = b2 if shampoo_b2 is None else shampoo_b2

    def sides(params):
        return jax.tree_util.tree_map_with_path(lambda path, x: _sides(path, x, max_dim=max_precond_dim),
                                                params)

    def init(params):
        dims = sides(params)

        def square(index, eye):
            def leaf(path, x, d):
                size = d[index]
                if not size:  # no array: orbax saves no zero-size one, vmap maps no layer axis
                    return optax.MaskedNode()
                one = (jnp.eye(size, dtype=x.dtype) if eye else jnp.zeros((size, size), x.dtype))
                return jnp.broadcast_to(one, (x.shape[0], size, size)) if _stacked(path) else one
            return jax.tree_util.tree_map_with_path(leaf, params, dims, is_leaf=lambda v: v is None)

        return ScaleBySoapState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                                nu=jax.tree.map(jnp.zeros_like, params),
                                left=square(0, False), right=square(1, False), q_left=square(0, True),
                                q_right=square(1, True))

    def update(updates, state, params=None):
        del params
        dims = sides(updates)
        count = state.count
        first = count == 0
        t = jnp.maximum(count, 1)  # Adam's step number, from the second call on
        scale = jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        phase = jnp.where(first, 1, jnp.where(count % precondition_frequency == 0, 2, 0))

        def leaf(path, g, mu, nu, lt, rt, ql, qr, d):
            left, right = bool(d[0]), bool(d[1])

            def one(g, mu, nu, lt, rt, ql, qr):
                mu_new = b1 * mu + (1.0 - b1) * g
                nu_new = b2 * nu + (1.0 - b2) * _rotate(g, ql, qr, left, right) ** 2
                step = _rotate_back(_rotate(mu_new, ql, qr, left, right) / (jnp.sqrt(nu_new) + eps), ql, qr,
                                    left, right)
                # The first call gathers the statistics only: no step, moments untouched.
                mu_new = jnp.where(first, mu, mu_new)
                nu_new = jnp.where(first, nu, nu_new)
                step = jnp.where(first, jnp.zeros_like(step), scale * step)
                if left:
                    lt = beta_p * lt + (1.0 - beta_p) * g @ g.T
                if right:
                    rt = beta_p * rt + (1.0 - beta_p) * g.T @ g

                def keep(ql, qr, nu):
                    return ql, qr, nu

                def start(ql, qr, nu):
                    return (_eigenbasis(lt) if left else ql), (_eigenbasis(rt) if right else qr), nu

                def refresh(ql, qr, nu):
                    if left:
                        ql, nu = _refresh(lt, ql, nu, axis=0)
                    if right:
                        qr, nu = _refresh(rt, qr, nu, axis=1)
                    return ql, qr, nu

                if left or right:
                    ql, qr, nu_new = jax.lax.switch(phase, (keep, start, refresh), ql, qr, nu_new)
                return step, mu_new, nu_new, lt, rt, ql, qr

            return _per_layer(path, one)(g, mu, nu, lt, rt, ql, qr)

        out = jax.tree_util.tree_map_with_path(leaf, updates, state.mu, state.nu, state.left, state.right,
                                               state.q_left, state.q_right, dims,
                                               is_leaf=lambda v: v is None)
        treedef = jax.tree.structure(updates)
        parts = [treedef.unflatten(p) for p in zip(*treedef.flatten_up_to(out), strict=True)]
        step, mu, nu, lt, rt, ql, qr = parts
        return step, ScaleBySoapState(count=optax.safe_int32_increment(count), mu=mu, nu=nu, left=lt,
                                      right=rt, q_left=ql, q_right=qr)

    return optax.GradientTransformation(init, update)
