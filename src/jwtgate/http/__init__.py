"""jwtgate.http"""
