"""dmq.log"""
