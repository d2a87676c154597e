"""jwtgate.vars"""
