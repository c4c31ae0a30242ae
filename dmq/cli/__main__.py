from dmq.cli import main

main()
