"""jwtgate.jose"""
