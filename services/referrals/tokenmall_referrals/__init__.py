"""The referrals service: the member registry, the sponsor tree, team performance and stars.

It owns registration (``POST /v1/members``) and publishes ``MemberRegistered``; it
follows spend from ``OrderPaid`` (``OrdersPaid``)/``OrderRefunded`` and the plan in force from
``PlanActivated`` so that it can report team performance and star levels (RULES §1, §5).
"""
