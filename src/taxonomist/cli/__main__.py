from taxonomist.cli.main import main

main()
