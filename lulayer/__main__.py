import gc

from lulayer import signals

signals.install()  # first: a signal while the rest is imported is recorded too (cli.main installs it again)
gc.disable()  # from the first import on (cli.main says why, and does it again)

from lulayer.cli import main  # noqa: E402

main()
