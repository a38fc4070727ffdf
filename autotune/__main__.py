import sys

try:
    from autotune.cli import main
except KeyboardInterrupt:   # Ctrl-C while Python is still importing: no traceback, the usual status
    sys.exit(130)

main()
