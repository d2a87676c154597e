"""jwtgate.cli"""
