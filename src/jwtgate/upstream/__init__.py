"""jwtgate.upstream"""
