"""The browser page: chat, runs and jobs, served on loopback with a token (`agent ui`)."""
