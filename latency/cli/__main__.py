from latency.cli.app import main

main()
