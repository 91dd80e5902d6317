"""Accounts (teams), users, memberships and roles, invites, and the onboarding profile."""
