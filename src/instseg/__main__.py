from instseg.cli.main import main

main()
