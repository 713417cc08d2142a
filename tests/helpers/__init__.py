"""Helpers the tests share: building API settings and models with tasks (api), raw HTTP requests (http_client), fast
training overrides (train), index overrides of the tiny model (index)."""
