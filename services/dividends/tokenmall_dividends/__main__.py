from tokenmall_dividends.app import main

main()
