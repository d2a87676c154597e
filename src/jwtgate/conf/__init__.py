"""jwtgate.conf"""
