from lulayer.cli import main

main()
