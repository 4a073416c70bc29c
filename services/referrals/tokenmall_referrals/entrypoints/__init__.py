"""HTTP entry points of the referrals service."""
