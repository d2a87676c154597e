"""jwtgate.runtime"""
