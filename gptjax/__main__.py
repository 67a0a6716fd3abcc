import sys

from gptjax.guards import stop_on_signals, stopped

stop_on_signals()  # first: a SIGTERM while the rest (JAX) is imported already exits 3, not 143

try:
    from gptjax.cli import main
except KeyboardInterrupt as e:
    sys.exit(stopped(e, "while starting; nothing was written"))

sys.exit(main())
