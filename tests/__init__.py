"""gentrain's tests (a package, so the rootdir, not tests/, goes on sys.path: tests/engine must not shadow engine)."""
