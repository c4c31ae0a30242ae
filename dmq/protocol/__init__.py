"""dmq.protocol"""
