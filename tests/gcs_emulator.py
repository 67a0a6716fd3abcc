"""A real GCS JSON API on 127.0.0.1 for the bucket tests: `gcp-storage-emulator`, in memory, one per session,
with the generation header and preconditions it lacks added (tests/gcs_emulator_server.py).

The fixture points both storage clients at it through their own settings, in this process and in the
children it starts: gcsfs (every path but checkpoints) through `STORAGE_EMULATOR_HOST` with anonymous
credentials, tensorstore (orbax checkpoints, the lock object) through `TENSORSTORE_GCS_HTTP_URL` with a
fixed test token. The metadata-server addresses are pointed at a closed local port, so no credential
lookup leaves the machine. `GPTJAX_GCS_EMULATOR_PYTHON` names another interpreter that has the emulator,
when the test environment itself lacks it.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

BUCKET = "gptjax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs():
    """The URL of an empty bucket (gs://gptjax-test) served by a local emulator; tests use subfolders."""
    python = os.environ.get("GPTJAX_GCS_EMULATOR_PYTHON", sys.executable)
    if python == sys.executable and importlib.util.find_spec("gcp_storage_emulator") is None:
        pytest.fail("gcp-storage-emulator is not installed: pip install -e '.[test]'")
    port = _free_port()
    server = os.path.join(os.path.dirname(__file__), "gcs_emulator_server.py")
    # The server's log goes to a file: a pipe that nobody reads fills up with its tracebacks of closed
    # connections, and the (single-threaded) server then blocks on the write and every client waits.
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed at teardown, after the server)
    proc = subprocess.Popen([python, server, "start", "--host=127.0.0.1",
                             f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}", "-q"],
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"the GCS emulator did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    closed = f"127.0.0.1:{_free_port()}"  # nothing listens there
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "FSSPEC_GCS_TOKEN": "anon",
           # gcsfs otherwise first asks the bucket's layout over gRPC and waits a minute for the answer.
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "GCE_METADATA_ROOT": closed, "GCE_METADATA_IP": closed, "GCE_METADATA_HOST": closed,
           "NO_GCE_CHECK": "True"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"  # fsspec read its environment at import
    yield f"gs://{BUCKET}"
    fsspec.config.conf["gcs"].pop("token", None)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
