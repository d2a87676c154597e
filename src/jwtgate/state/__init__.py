"""jwtgate.state"""
