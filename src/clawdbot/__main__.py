from clawdbot.cli import main

main()
