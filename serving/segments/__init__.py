"""Dynamic segments at run time: the batch refresh and the rules it shares with the event path (`refresh`), events
arriving at the service (`events`), the membership store (`store`), campaign lift and segment backtests (`lift`),
and what a customer would need to change to reach a goal (`counterfactuals`)."""
