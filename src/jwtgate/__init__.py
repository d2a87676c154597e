"""jwtgate: an API gateway that authenticates API clients with JSON Web Tokens.

Configuration is NGINX syntax; the authentication feature set follows the NGINX Plus
``auth_jwt`` module. See ``docs/`` and the project README.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
