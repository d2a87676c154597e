"""jwtgate.process"""
