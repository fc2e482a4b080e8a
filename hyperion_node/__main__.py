from hyperion_node.cli.app import main

main()
