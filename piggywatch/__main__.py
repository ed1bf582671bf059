from piggywatch.cli import main

main()
