"""jwtgate's modules, in the order their handlers run within a phase.

Adding a feature means adding a module here: a new file in this package and its row in
``MODULES``. Nothing registers itself on import.
"""

from __future__ import annotations

from jwtgate.modules.access import AccessModule
from jwtgate.modules.api import ApiModule
from jwtgate.modules.auth_jwt import AuthJwtModule
from jwtgate.modules.base import Module
from jwtgate.modules.core import CoreModule
from jwtgate.modules.dashboard import DashboardModule
from jwtgate.modules.headers import HeadersModule
from jwtgate.modules.keyval import KeyvalModule
from jwtgate.modules.limit_req import LimitReqModule
from jwtgate.modules.log import LogModule
from jwtgate.modules.map import MapModule
from jwtgate.modules.proxy import ProxyModule
from jwtgate.modules.rewrite import RewriteModule
from jwtgate.modules.state import StateModule
from jwtgate.modules.static import StaticModule
from jwtgate.modules.status import StatusModule
from jwtgate.modules.tls import SslModule

__all__ = ["MODULES", "Module", "default_modules"]

#: Module classes, in order.
MODULES: tuple[type[Module], ...] = (
    StaticModule,  # first: its error_page table is in place before any other handler answers
    CoreModule,
    SslModule,
    HeadersModule,
    RewriteModule,
    MapModule,
    StateModule,
    LimitReqModule,
    AccessModule,  # allow/deny: in the access phase before auth_jwt (NGINX's satisfy all)
    KeyvalModule,
    AuthJwtModule,
    ProxyModule,
    ApiModule,
    DashboardModule,
    StatusModule,  # after proxy (its upstream groups exist), its LOG handler before access_log
    LogModule,
)


def default_modules() -> list[Module]:
    """Fresh instances of every module in :data:`MODULES` (one set per configuration load)."""
    return [cls() for cls in MODULES]
