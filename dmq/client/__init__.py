"""dmq.client"""
