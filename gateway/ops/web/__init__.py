"""The local, read-only status page (config ``web: {listen: 127.0.0.1:8080}``)."""
