from lulayer import signals

signals.install()  # first: a signal while the rest is imported is recorded too (cli.main installs it again)

from lulayer.cli import main  # noqa: E402

main()
