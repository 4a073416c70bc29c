from tokenmall_wallet.app import main

main()
