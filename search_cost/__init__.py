"""search_cost"""
