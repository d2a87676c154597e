"""jwtgate.state: the state behind rate limits, in process memory or in Redis.

``bucket`` is NGINX's leaky-bucket arithmetic (pure, no clock); ``store`` the interface both
backends implement; ``memory`` the embedded default (per process); ``redis`` the shared
backend (one Lua script per operation, in ``lua/``) and the connection a running gateway owns.
``keyval`` holds key-value zones (a file per zone shared by the workers of an instance) and
``keyval_redis`` keeps ``sync`` zones in Redis for every instance.
"""
