from light_tts.mcp.server import main

main()
