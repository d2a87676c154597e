"""jwtgate.modules"""
