"""Media types by file extension, in place of NGINX's ``types {}`` block and ``mime.types``."""

from __future__ import annotations

__all__ = ["MIME_TYPES", "content_type_for"]

#: Extensions and their MIME types: a small subset of NGINX's ``mime.types``.
MIME_TYPES: dict[str, str] = {
    "html": "text/html", "htm": "text/html", "shtml": "text/html",
    "css": "text/css", "xml": "text/xml", "txt": "text/plain", "md": "text/markdown",
    "csv": "text/csv", "js": "application/javascript", "mjs": "application/javascript",
    "json": "application/json", "map": "application/json", "yaml": "application/yaml",
    "yml": "application/yaml", "pdf": "application/pdf", "wasm": "application/wasm",
    "zip": "application/zip", "gz": "application/gzip", "bin": "application/octet-stream",
    "gif": "image/gif", "jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png",
    "svg": "image/svg+xml", "svgz": "image/svg+xml", "ico": "image/x-icon", "webp": "image/webp",
    "avif": "image/avif", "woff": "font/woff", "woff2": "font/woff2", "ttf": "font/ttf",
    "otf": "font/otf", "mp4": "video/mp4", "webm": "video/webm", "mp3": "audio/mpeg",
}


def content_type_for(uri: str, default_type: str) -> str:
    """The ``Content-Type`` NGINX gives a response for ``uri``: by the file name's extension
    (:data:`MIME_TYPES`, in place of ``types {}``), else ``default_type``."""
    ext = uri.rsplit("/", 1)[-1].rpartition(".")
    return MIME_TYPES.get(ext[2].lower(), default_type) if ext[1] else default_type
