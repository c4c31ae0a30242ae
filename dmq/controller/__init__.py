"""dmq.controller"""
