from gitorch.cli import main

main()
