from gitorch.cli.commands import main

main()
