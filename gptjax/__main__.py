import sys

from gptjax.guards import stop_on_signals

stop_on_signals()  # first: a SIGTERM while the rest (JAX) is imported already exits 3, not 143

from gptjax.cli import main  # noqa: E402

sys.exit(main())
