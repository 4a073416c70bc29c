"""``python -m tokenmall_referrals``: serve the referrals API."""

from tokenmall_referrals.app import main

if __name__ == "__main__":
    main()
