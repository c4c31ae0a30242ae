"""dmq.broker"""
