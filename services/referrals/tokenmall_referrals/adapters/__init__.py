"""Persistence of the referrals service."""
