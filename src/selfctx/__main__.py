from selfctx.cli import main

main()
