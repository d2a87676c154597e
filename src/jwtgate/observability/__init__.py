"""jwtgate.observability"""
