"""Scheduled jobs: their triggers, the occurrence ledger, the scheduler loop, and exports."""
