from coi_async.cli.main import main

main()
