"""Use cases of the referrals service: commands, event handlers and read views."""
